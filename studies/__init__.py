"""Research studies built on `tff_backdoor`: sweeps, the Bilgin localization study, the paper
tables and figures. Depends on the core library; the core never imports this package."""
