"""The app's routers, one per concern; each ``router(ctx)`` builds an ``APIRouter`` bound to one
app instance's :class:`~diffusion_handles.web.context.WebContext`."""
