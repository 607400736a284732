"""Wire contract: the two .proto sources and the betterproto2 code generated from them."""

from .generated import foundry as foundry_api
from .generated.fleetforge.runtime import v1 as runtime_api

__all__ = ["foundry_api", "runtime_api"]
