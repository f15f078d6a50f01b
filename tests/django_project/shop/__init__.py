"""A Django app with a model and ``OnceTask`` tasks, as a user's app would have."""
