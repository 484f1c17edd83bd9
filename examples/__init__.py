"""Examples: the demo, the chat, the Flask and FastAPI apps, and the balancer configurations."""
