"""Placeholder registration for `tsguard evaluate`; replaced by the real command as it is built."""

from detector.errors import UserError


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate detectors (NAB) (not built yet)")
    p.set_defaults(handler=_not_built)


def _not_built(args) -> int:
    raise UserError("'tsguard evaluate' is not built yet")
