"""Test session set-up: fixture modules are plugins, like Quix Streams' suite."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.settings",
]
