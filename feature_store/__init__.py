"""Runtime side of the Feast feature store (the definitions live in ``feature_repo/``).

- :mod:`feature_store.names`: names, windows and descriptions (read by ``feature_repo/``);
- :mod:`feature_store.aggregation`: windowed statistics fed by feedback events;
- :mod:`feature_store.store`: open/apply a profile, push rows online and offline;
- :mod:`feature_store.training`: point-in-time training sets, ``materialize_incremental``;
- :mod:`feature_store.reader`: the serving-side reader with a latency budget;
- prompt embeddings are a request feature, computed in-process by :mod:`llmopt.embeddings`;
- :mod:`feature_store.demo`: push the demo's feedback through the store and read it back.

Importing this package imports no Feast (its import takes seconds): modules that need Feast
import it themselves.
"""
