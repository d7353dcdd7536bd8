"""Training of the BiLSTM and BERT taggers (one loop for both)."""
