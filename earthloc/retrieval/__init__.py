"""Retrieval for evaluation and localisation, one module per job.

- `protocol`: the test-time rotations and the recall cut-offs (paper Sec. 5.1.2);
- `descriptors`: descriptors of an image set at every test-time rotation;
- `index`: the faiss index that holds the database descriptors;
- `search`: top-k search, raw ids mapped back to (DB image, rotation), rotations collapsed;
- `recall`: Recall@N, recall curves and a random ranking's exact expectation;
- `bootstrap`: intervals and paired margins, resampling queries or whole ISS passes;
- `orientation`: the photo's up bearing and the error of the predicted rotation;
- `evalset`: one evaluation set read, embedded, searched and counted.
"""
