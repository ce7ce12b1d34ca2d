"""limace.training"""
