from services.registry.server import serve

serve()
