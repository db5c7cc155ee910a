"""The ``embed`` stage and its backends. Importing the package registers the stage."""
from curate.embed import stage  # noqa: F401  (registration)
