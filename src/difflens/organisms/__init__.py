"""Model organisms: finetunes with a known objective, and the builder that makes them.

Submodules are imported on use (torch and peft load only when a build runs):
  * :mod:`~difflens.organisms.card` — ``OrganismCard``, the organism's ``card.json``;
  * :mod:`~difflens.organisms.config` — ``BuildConfig``, whose fields are the build's flags;
  * :mod:`~difflens.organisms.builder` — ``build_organism`` (``BuildConfig`` re-exported);
  * :mod:`~difflens.organisms.cli` — the ``difflens organism build`` command.
"""
