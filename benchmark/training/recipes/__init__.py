"""Domain-generalization training recipes any method can wear, one file each: SAM, MixStyle."""
