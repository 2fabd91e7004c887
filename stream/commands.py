"""Placeholder registration for `tsguard serve`; replaced by the real command as it is built."""

from detector.errors import UserError


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the service (not built yet)")
    p.set_defaults(handler=_not_built)


def _not_built(args) -> int:
    raise UserError("'tsguard serve' is not built yet")
