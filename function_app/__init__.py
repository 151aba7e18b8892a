"""The Azure Functions app: thin adapters over ``shared`` (the video and many-models cores) and ``gpu_job`` (the worker)."""

import azure.durable_functions as df
import azure.functions as func


def create_app() -> df.DFApp:
    from function_app import activities, batches, many_models, orchestrator, publish, status_page, upload

    app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
    for blueprint in (upload.bp, orchestrator.bp, activities.bp, batches.bp, many_models.bp, publish.bp, status_page.bp):
        app.register_functions(blueprint)
    return app
