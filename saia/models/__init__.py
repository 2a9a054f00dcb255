"""Model servers that saia's own sbatch scripts run on CPU nodes (a real embedding model).

Jobs import these, never the hub: their runtimes (onnxruntime, tokenizers, numpy)
are the optional ``models`` dependencies.
"""
