"""The Azure Functions app: thin adapters over ``shared`` (the video core) and ``gpu_job`` (the scorer)."""

import azure.durable_functions as df
import azure.functions as func


def create_app() -> df.DFApp:
    from function_app import activities, batches, orchestrator, upload

    app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
    for blueprint in (upload.bp, orchestrator.bp, activities.bp, batches.bp):
        app.register_functions(blueprint)
    return app
