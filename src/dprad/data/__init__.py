"""Reading, labelling tables, splitting and synthesising radiology reports."""
