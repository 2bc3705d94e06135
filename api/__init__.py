"""The faces of Lamina: the Flask app, the CLI, the web page and the Python client."""
