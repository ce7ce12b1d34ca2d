"""limace.potentials"""
