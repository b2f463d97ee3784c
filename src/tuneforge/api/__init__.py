"""The OpenAI-compatible HTTP server: files, fine-tuning jobs, models and chat completions.

`create_app()` (app.py) builds the FastAPI app; `run_server()` (server.py) serves it with uvicorn.
"""
