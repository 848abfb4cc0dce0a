"""Model organisms: finetunes with a known objective, and the builder that makes them.

Submodules are imported on use (torch and peft load only when a build runs):
  * :mod:`~difflens.organisms.card` — ``OrganismCard``, the organism's ``card.json``;
  * :mod:`~difflens.organisms.builder` — ``BuildConfig`` and ``build_organism``;
  * :mod:`~difflens.organisms.cli` — the ``difflens organism build`` command.
"""
