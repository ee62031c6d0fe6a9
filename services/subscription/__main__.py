from services.subscription.server import serve

serve()
