"""What saia's job scripts (sbatch/) run on the compute nodes with SAIA_PYTHON."""
