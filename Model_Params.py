"""Every hyperparameter of the project, one line each. Edit the values; no logic lives here.

init.py reads vocab_size; train.py reads all of them (and accepts `--<name> VALUE` to override
any one for a single run); run.py reads only the sampling defaults, because a trained model
carries its own shape inside its checkpoint.
"""

# --- tokenizer -------------------------------------------------------------------------------
vocab_size = 4096          # tokens in the BPE vocabulary: 256 byte tokens + (vocab_size - 256) merges

# --- model shape -----------------------------------------------------------------------------
block_size = 128           # context length: how many tokens the model sees at once
emb_len = 256              # width of every token vector (the embedding / residual stream size)
num_layers = 6             # number of transformer blocks stacked on top of each other
num_heads = 4              # attention heads per block; emb_len must be divisible by it
dropout = 0.1              # probability of zeroing activations during training (regularisation)
bpe_dropout = 0.1          # chance that a training token is split into the two tokens it was merged from (0 = off)

# --- optimisation ----------------------------------------------------------------------------
batch_size = 16            # sequences per optimisation step (per process, before accumulation)
grad_accum_steps = 1       # micro-batches summed into one optimiser step
optimizer = "muon"         # "adamw", or "muon": Muon for the blocks' weight matrices, AdamW for the rest
learning_rate = 3e-3       # peak AdamW learning rate, reached after warmup
muon_lr = 0.02             # peak Muon learning rate (optimizer = "muon"); same warm-up and decay as learning_rate
min_lr = 0.0               # floor the cosine schedule decays to (0: all the way down)
warmup_iters = 100         # steps of linear warmup from 0 to learning_rate
max_iters = 100000         # most optimisation steps; the cosine schedule ends here or when max_minutes runs out
max_epochs = 18.0          # most passes over the training tokens, as steps; the schedule ends there if that comes first (0 = none)
max_minutes = 60.0         # training time budget in minutes, resumed runs included; schedule fits into it (0 = none)
weight_decay = 0.4         # decoupled decay of 2-D weight matrices (AdamW's, and Muon's): w -= lr × weight_decay × w
adam_eps = 1e-4            # AdamW's ε: gradients far below it barely move a weight (see support/optim.py)
grad_clip = 1.0            # clip the global gradient norm to this (0 disables)
ema_decay = 0.0            # > 0: evaluate and save a moving average of the weights, e.g. 0.998 (0 = off)
teacher = "first"          # learn from a teacher too (distillation): "first" = train one with these settings first; a .pth; "" = off
distill_weight = 0.5       # with a teacher: loss = (1 - w) × cross-entropy with the text + w × KL(teacher ‖ model)
eval_interval = 200        # steps between validation evaluations (and checkpoints)
eval_windows = 200         # fixed validation windows scored at each evaluation
final_eval_tokens = 1_000_000  # most validation tokens scored by the final evaluation, in windows spread evenly over the split (0 = all)

# --- generation (run.py) ---------------------------------------------------------------------
max_new_tokens = 200       # tokens generated per prompt
temperature = 0.8          # sampling temperature; 0 means greedy (always the likeliest token)
top_k = 0                  # sample only from the k likeliest tokens (0 = no limit)
top_p = 0.95               # nucleus sampling: smallest set of tokens with this total probability
