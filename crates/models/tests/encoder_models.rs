//! Golden parity and shared checks for the encoder families (BERT, RoBERTa,
//! DistilBERT): one `model_tests!` line per family × head fixture.

mod common;

use rustformers_models::{
    AutoModel, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification, AutoModelForTokenClassification,
};

model_tests! {
    bert_base: "tiny-bert-base", AutoModel;
    bert_seqcls: "tiny-bert-seqcls", AutoModelForSequenceClassification;
    bert_seqcls_multi: "tiny-bert-seqcls-multi", AutoModelForSequenceClassification;
    bert_tokcls: "tiny-bert-tokcls", AutoModelForTokenClassification;
    bert_qa: "tiny-bert-qa", AutoModelForQuestionAnswering;
    bert_mlm: "tiny-bert-mlm", AutoModelForMaskedLM;

    roberta_base: "tiny-roberta-base", AutoModel;
    roberta_seqcls: "tiny-roberta-seqcls", AutoModelForSequenceClassification;
    roberta_tokcls: "tiny-roberta-tokcls", AutoModelForTokenClassification;
    roberta_qa: "tiny-roberta-qa", AutoModelForQuestionAnswering;
    roberta_mlm: "tiny-roberta-mlm", AutoModelForMaskedLM;

    distilbert_base: "tiny-distilbert-base", AutoModel;
    distilbert_seqcls: "tiny-distilbert-seqcls", AutoModelForSequenceClassification;
    distilbert_tokcls: "tiny-distilbert-tokcls", AutoModelForTokenClassification;
    distilbert_qa: "tiny-distilbert-qa", AutoModelForQuestionAnswering;
    distilbert_mlm: "tiny-distilbert-mlm", AutoModelForMaskedLM;
}
