"""The hyperparameters, one line each. Edit the values; no logic lives here.

First the original project's settings, under its names; then what this project adds beyond it,
each line naming the value that switches it off. init.py reads vocab_size; train.py the model and
training settings (`python train.py --block-size 64` overrides one for a single run, and
`python train.py --help` lists them); run.py the generation
settings, since a trained model carries its own shape inside its checkpoint.
"""

# --- the original's settings -----------------------------------------------------------------
vocab_size = 4096          # tokens in the BPE vocabulary: 256 byte tokens + (vocab_size - 256) merges (the original: 256)
block_size = 128           # context length: how many tokens the model sees at once (the original: 32)
emb_len = 256              # width of every token vector (the embedding / residual stream size)
num_layers = 6             # transformer blocks stacked on top of each other
num_heads = 4              # attention heads per block; emb_len must be divisible by it
batch_size = 16            # windows of block_size tokens per optimisation step
dropout = 0.1              # chance of zeroing an activation while training (regularisation)
learning_rate = 3e-3       # peak learning rate (the original: Adam at 1e-3, constant)
max_iters = 100000         # most optimisation steps: the learning-rate schedule ends here (or sooner: max_epochs, max_minutes)
eval_interval = 200        # steps between validation evaluations and checkpoints (the original: 1000)
max_new_tokens = 200       # tokens run.py generates per prompt
temperature = 0.8          # run.py's sampling temperature; 0 = greedy, always the likeliest token (the original: 1)

# --- beyond the original: each line names its off value --------------------------------------
positions = "rotary"       # where a token sits: "rotary" (queries and keys turned by position) or "learned" (the original's table) = off
optimizer = "muon"         # "muon": Muon for the blocks' weight matrices, AdamW for the rest; "adamw" = off
muon_lr = 0.02             # Muon's peak learning rate (learning_rate is AdamW's); the same warm-up and decay
bpe_dropout = 0.1          # chance that a training token is split into the two tokens it was merged from (0 = off)
weight_decay = 0.4         # decoupled decay of the weight matrices: each step w -= lr × weight_decay × w (0 = off)
warmup_iters = 100         # steps of linear warm-up from 0 to learning_rate, then a cosine decay to 0 (0 = off)
grad_accum_steps = 1       # micro-batches whose gradients are summed into one step: a bigger batch in the same memory (1 = off)
max_epochs = 18.0          # most passes over the training tokens; the schedule ends there if that comes first (0 = off)
max_minutes = 60.0         # training time budget, resumed runs included; the schedule is fitted into it (0 = off)
top_p = 0.95               # run.py's nucleus sampling: draw from the likeliest tokens holding this probability (1 = off)
top_k = 0                  # run.py: draw from the k likeliest tokens only (0 = off)
