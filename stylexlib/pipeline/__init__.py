"""The numbered notebooks as a headless pipeline, and the ``stylex`` command line."""
