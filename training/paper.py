"""The paper's reported results: the one copy in the repository (the README, the model card, evaluation
reports and `training.compare` all read it from here).

"Lymph Node Metastasis Detection in Pancreatic Ductal Adenocarcinoma using ResNet with Attention
Mechanism": its own test set of 150 slices, without intervals, and without saying whether the split
kept patients apart. Numbers on other data (the synthetic phantom above all) are not comparable.
"""

PAPER_TITLE = (
    "Lymph Node Metastasis Detection in Pancreatic Ductal Adenocarcinoma using ResNet with Attention Mechanism"
)
PAPER_TEST_SLICES = 150
# The paper's model: ResNet-50 with channel + spatial attention.
PAPER_ATTENTION_MODEL = "ResNet-50 + dual attention"
# model name as in the paper's table (and training.compare's) -> metrics as fractions
PAPER_RESULTS = {
    "VGG16": {"accuracy": 0.7933, "precision": 0.7550, "recall": 0.8333, "f1": 0.7920, "auc_roc": 0.88},
    "ResNet-50": {"accuracy": 0.8133, "precision": 0.7840, "recall": 0.8667, "f1": 0.8230, "auc_roc": 0.91},
    "ViT-B/16": {"accuracy": 0.8333, "precision": 0.8010, "recall": 0.8933, "f1": 0.8450, "auc_roc": 0.93},
    PAPER_ATTENTION_MODEL: {"accuracy": 0.8733, "precision": 0.8256, "recall": 0.9467, "f1": 0.8820, "auc_roc": 0.97},
}


def paper_table_rows() -> list:
    """Markdown rows `| model | accuracy | precision | recall | F1 | AUC |`, percentages as the paper prints them."""
    return [
        f"| {model} | {100 * m['accuracy']:.2f} | {100 * m['precision']:.2f} | {100 * m['recall']:.2f} "
        f"| {100 * m['f1']:.2f} | {m['auc_roc']:.2f} |"
        for model, m in PAPER_RESULTS.items()
    ]
