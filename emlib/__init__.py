"""emlib: the library behind the executable companion to *Convergent Linear
Representations of Emergent Misalignment* (Soligo, Turner, Rajamanoharan, Nanda, 2025).

One module per pipeline stage: ``config`` (params), ``models``, ``data``, ``generate``,
``plotting``, ``book``; later chapters add ``judge``, ``metrics``, ``train``,
``activations``, ``interventions`` and ``probes``.
"""

__version__ = "0.1.0"
