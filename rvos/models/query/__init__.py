"""The query-based (ReferFormer-family) RVOS core shared by SOC, BIFIT, SgMg and CMA."""
