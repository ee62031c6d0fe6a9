from services.scheduler.server import serve

serve()
