"""Placeholder registration for `tsguard logs`; replaced by the real command as it is built."""

from detector.errors import UserError


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "logs", help="log heads: classify and summarize log lines (not built yet)"
    )
    p.set_defaults(handler=_not_built)


def _not_built(args) -> int:
    raise UserError("'tsguard logs' is not built yet")
