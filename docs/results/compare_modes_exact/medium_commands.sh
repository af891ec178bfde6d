jetevo simulate --process qcd-wide --n-jets 20000 --seed 13 --index 0 --out cmp_medium/sim/aoj --workers 2 --quiet
jetevo simulate --process top --n-jets 10000 --seed 11 --index 0 --out cmp_medium/sim/jetclass --workers 2 --quiet
jetevo simulate --process top --n-jets 1000 --seed 21 --index 1 --out cmp_medium/sim/jetclass --workers 2 --quiet
jetevo simulate --process top --n-jets 5000 --seed 31 --index 2 --out cmp_medium/sim/jetclass --workers 2 --quiet
jetevo recluster cmp_medium/sim/aoj --out cmp_medium/trees/aoj --workers 2 --shard-size 10000 --quiet
jetevo recluster cmp_medium/sim/jetclass --out cmp_medium/trees/tops --workers 2 --quiet
jetevo tokenizer train --config configs/tokenizer.yaml --out cmp_medium/tree/tokenizer/tok.ckpt --quiet --trees cmp_medium/trees/aoj/RunG_batch0.0000.trees.parquet cmp_medium/trees/tops/TTBar_000.trees.parquet max_steps=1000 n_codes=2048 checkpoint_every=100000
jetevo tokenizer eval --ckpt cmp_medium/tree/tokenizer/tok.ckpt --trees cmp_medium/reference/TTBar_002.trees.parquet --json cmp_medium/tree/tokenizer/report.json
jetevo tokenizer encode --ckpt cmp_medium/tree/tokenizer/tok.ckpt --trees cmp_medium/trees/aoj/RunG_batch0.0000.trees.parquet --out cmp_medium/tree/tokens/aoj_train
jetevo tokenizer encode --ckpt cmp_medium/tree/tokenizer/tok.ckpt --trees cmp_medium/trees/aoj/RunG_batch0.0001.trees.parquet --out cmp_medium/tree/tokens/aoj_val
jetevo tokenizer encode --ckpt cmp_medium/tree/tokenizer/tok.ckpt --trees cmp_medium/trees/tops/TTBar_000.trees.parquet --out cmp_medium/tree/tokens/top_train
jetevo tokenizer encode --ckpt cmp_medium/tree/tokenizer/tok.ckpt --trees cmp_medium/trees/tops/TTBar_001.trees.parquet --out cmp_medium/tree/tokens/top_val
jetevo tokenizer encode --ckpt cmp_medium/tree/tokenizer/tok.ckpt --trees cmp_medium/reference/TTBar_002.trees.parquet --out cmp_medium/tree/tokens/reference
jetevo train --config configs/tree_base.yaml --out cmp_medium/tree/model/pretrain --quiet --train cmp_medium/tree/tokens/aoj_train --val cmp_medium/tree/tokens/aoj_val model.n_layer=4 model.n_head=4 model.n_embd=128 train.batch_size=32 train.val_every=500 train.val_batches=20 train.warmup_steps=50 train.max_steps=1500 train.lr=0.0006
jetevo train --config configs/tree_base.yaml --out cmp_medium/tree/model/finetune --quiet --init-from cmp_medium/tree/model/pretrain/model.ckpt --train cmp_medium/tree/tokens/top_train --val cmp_medium/tree/tokens/top_val model.n_layer=4 model.n_head=4 model.n_embd=128 train.batch_size=32 train.val_every=500 train.val_batches=20 train.warmup_steps=50 train.max_steps=2500 train.lr=0.0003 'train.split_weights=[8,8,4]'
jetevo evaluate-splits --ckpt cmp_medium/tree/model/finetune/model.ckpt --tokens cmp_medium/tree/tokens/reference --json cmp_medium/tree/model/heldout_nll.json
jetevo generate --ckpt cmp_medium/tree/model/finetune/model.ckpt --n-jets 5000 --seed 1 --out cmp_medium/tree/generated --device cpu --quiet
jetevo evaluate --generated cmp_medium/tree/generated --reference cmp_medium/reference --out cmp_medium/tree/evaluate --massless --no-plots
jetevo tokenizer train --config configs/tokenizer_flat.yaml --out cmp_medium/flat/tokenizer/tok.ckpt --quiet --trees cmp_medium/trees/aoj/RunG_batch0.0000.trees.parquet cmp_medium/trees/tops/TTBar_000.trees.parquet max_steps=1000 n_codes=2048 checkpoint_every=100000
jetevo tokenizer eval --ckpt cmp_medium/flat/tokenizer/tok.ckpt --trees cmp_medium/reference/TTBar_002.trees.parquet --json cmp_medium/flat/tokenizer/report.json
jetevo tokenizer encode --ckpt cmp_medium/flat/tokenizer/tok.ckpt --trees cmp_medium/trees/aoj/RunG_batch0.0000.trees.parquet --out cmp_medium/flat/tokens/aoj_train
jetevo tokenizer encode --ckpt cmp_medium/flat/tokenizer/tok.ckpt --trees cmp_medium/trees/aoj/RunG_batch0.0001.trees.parquet --out cmp_medium/flat/tokens/aoj_val
jetevo tokenizer encode --ckpt cmp_medium/flat/tokenizer/tok.ckpt --trees cmp_medium/trees/tops/TTBar_000.trees.parquet --out cmp_medium/flat/tokens/top_train
jetevo tokenizer encode --ckpt cmp_medium/flat/tokenizer/tok.ckpt --trees cmp_medium/trees/tops/TTBar_001.trees.parquet --out cmp_medium/flat/tokens/top_val
jetevo tokenizer encode --ckpt cmp_medium/flat/tokenizer/tok.ckpt --trees cmp_medium/reference/TTBar_002.trees.parquet --out cmp_medium/flat/tokens/reference
jetevo train --config configs/flat_base.yaml --out cmp_medium/flat/model/pretrain --quiet --train cmp_medium/flat/tokens/aoj_train --val cmp_medium/flat/tokens/aoj_val model.n_layer=4 model.n_head=4 model.n_embd=128 train.batch_size=32 train.val_every=500 train.val_batches=20 train.warmup_steps=50 train.max_steps=1500 train.lr=0.0006
jetevo train --config configs/flat_base.yaml --out cmp_medium/flat/model/finetune --quiet --init-from cmp_medium/flat/model/pretrain/model.ckpt --train cmp_medium/flat/tokens/top_train --val cmp_medium/flat/tokens/top_val model.n_layer=4 model.n_head=4 model.n_embd=128 train.batch_size=32 train.val_every=500 train.val_batches=20 train.warmup_steps=50 train.max_steps=2500 train.lr=0.0003
jetevo evaluate-particles --ckpt cmp_medium/flat/model/finetune/model.ckpt --tokens cmp_medium/flat/tokens/reference --json cmp_medium/flat/model/heldout_nll.json
jetevo generate --ckpt cmp_medium/flat/model/finetune/model.ckpt --n-jets 5000 --seed 1 --out cmp_medium/flat/generated --device cpu --quiet
jetevo evaluate --generated cmp_medium/flat/generated --reference cmp_medium/reference --out cmp_medium/flat/evaluate --massless --no-plots
jetevo generate --ckpt cmp_medium/tree/model/finetune/model.ckpt --n-jets 5000 --seed 1 --out cmp_medium/bigram/generated --device cpu --quiet --baseline bigram
jetevo evaluate --generated cmp_medium/bigram/generated --reference cmp_medium/reference --out cmp_medium/bigram/evaluate --massless --no-plots
