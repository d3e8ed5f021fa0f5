"""Serving on Ray Serve: the OpenAI-compatible endpoint (app), its request and response
format (openai) and where request images may come from (images)."""
