"""limace: MACE potentials for Li-In and Li-Sn alloy anodes.

Data flows one way: structures -> labelled configurations -> trained potential -> simulations -> reports.
Sub-packages: :mod:`limace.data`, :mod:`limace.training`, :mod:`limace.potentials`, :mod:`limace.md`,
:mod:`limace.analysis`.
"""

__version__ = "0.1.0"
