# Shared session fixtures (tiny models, tiny data, tiny trained exports) for every test module.
pytest_plugins = ["tests.tiny_models"]
