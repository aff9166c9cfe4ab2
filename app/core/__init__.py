"""The retrieval core: what serving, evaluation and training all call.

- `names`: the `base` and `auto` sentinels and the expert-name rule;
- `router`: pure-numpy routing over pilot embeddings;
- `pilots`: pilot embeddings from query embeddings (centroids);
- `planning`: which encoders embed a query and which indexes each embedding searches;
- `fusion`: one ranked list from the hits of several (encoder, index) searches;
- `hybrid`: dense and lexical lists fused (convex or RRF), the per-query dense weight;
- `lexical`: a query's terms as the lexical index's match expression.

Pure numpy and the standard library: no model, no FAISS, no HTTP.
"""
