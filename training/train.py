"""Placeholder registration for `tsguard train`; replaced by the real command as it is built."""

from detector.errors import UserError


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="offline (re)training job; writes a model directory (not built yet)")
    p.set_defaults(handler=_not_built)


def _not_built(args) -> int:
    raise UserError("'tsguard train' is not built yet")
