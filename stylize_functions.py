"""Functions entry point (PYTHON_SCRIPT_FILE_NAME). Named so it does not clash with the function_app package."""

from function_app import create_app

app = create_app()
