"""The models-from-code file of the polycolor pyfunc: MLflow executes it when it loads the model; never imported.

package.PYFUNC_ENTRY names this file as `python_model`. Everything it serves is defined in pyfunc.py.
"""

import mlflow

from polycolor.serving.pyfunc import PolycolorModel

mlflow.models.set_model(PolycolorModel())
