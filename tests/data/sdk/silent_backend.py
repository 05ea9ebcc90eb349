"""A deliberately broken backend for tests/sdk_backends.rs: attaches and accepts, but
never replies (every request is completed with Done). `corelay backend-check` must FAIL."""

from corelay_backend import Backend, GatewayGone, Service

try:
    Backend.attach_env().run(Service())
except GatewayGone:
    pass
