"""The mapping report sections, under their former module name: they live in
`metamodal.evaluate.report.mapping`."""

from metamodal.evaluate.report.mapping import MappingResults, mapping_section

__all__ = ["MappingResults", "mapping_section"]
