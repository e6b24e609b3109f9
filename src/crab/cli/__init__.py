"""The ``crab`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package and is loaded only
when invoked, so ``crab --help`` stays fast and torch is imported only by the
commands that need it.  Errors a user can cause (:class:`crab.CrabError`) are
printed as one line on stderr with exit status 2; no traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from crab import __version__
from crab.core.errors import CrabError, os_error_message


def _error(message: str, code: int = 2) -> None:
    """Print ``error: message`` on one line of stderr and exit with ``code``."""
    click.echo("error: " + " ".join(str(message).split()), err=True)
    sys.exit(code)

#: sub-command name -> (module, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": ("crab.cli.simulate_cmd", "simulate", "Run the physics Monte Carlo and write TOD with truth."),
    "inspect": ("crab.cli.simulate_cmd", "inspect", "Summarise a TOD file; optionally plot it."),
    "train": ("crab.cli.train_cmd", "train", "Train the GAN on Monte Carlo TOD."),
    "generate": ("crab.cli.generate_cmd", "generate", "Generate TOD of any length with a trained model or the template baseline."),
    "validate": ("crab.cli.validate_cmd", "validate", "Compare generated TOD with held-out Monte Carlo; write a report."),
    "validate-phi": ("crab.cli.validate_phi_cmd", "validate_phi", "Compare a phi-conditioned model with Monte Carlo at several phi."),
    "run": ("crab.cli.run_cmd", "run", "Run the whole pipeline (MC, training, generation, validation) on the default setup."),
    "export": ("crab.cli.export_cmd", "export", "Make a TOD file readable by litebird_sim (read_list_of_observations)."),
    "impact": ("crab.cli.impact_cmd", "impact", "From glitches to B-modes: maps, spectra and the bias on r (needs crab-tod[litebird])."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = COMMANDS[name][0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._available(name):
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="crab")
def cli() -> None:
    """CRAB: cosmic-ray glitches in TES bolometer TOD, by Monte Carlo and GAN."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``crab`` console script."""
    from crab.core.interrupt import stop_on_signals

    try:
        with stop_on_signals():  # SIGTERM and ^C stop a run cleanly: temporary files are removed
            rv = cli.main(args=argv, prog_name="crab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # bad usage or option value: one line, like CrabError
        _error(exc.format_message(), exc.exit_code)
    except CrabError as exc:
        _error(str(exc))
    except OSError as exc:  # the machine, the file system, the user's rights: not a bug of CRAB
        message = os_error_message(exc)
        if message is None:
            raise
        _error(message)
    except MemoryError:
        _error("out of memory: the run needs more memory than this machine has available (make a smaller run)")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
