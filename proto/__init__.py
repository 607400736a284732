"""Wire contract: the .proto sources and the betterproto2 code generated from them."""

from .generated import foundry as foundry_api
from .generated.foundry.admin import v1 as admin_api
from .generated.fleetforge.runtime import v1 as runtime_api
from .generated.foundry.analytics import v1 as analytics_api

__all__ = ["admin_api", "analytics_api", "foundry_api", "runtime_api"]
