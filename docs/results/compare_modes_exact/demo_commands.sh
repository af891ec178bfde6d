jetevo simulate --process qcd-wide --n-jets 1000 --seed 13 --index 0 --out cmp_demo/sim/aoj --workers 2 --quiet
jetevo simulate --process top --n-jets 500 --seed 11 --index 0 --out cmp_demo/sim/jetclass --workers 2 --quiet
jetevo simulate --process top --n-jets 250 --seed 21 --index 1 --out cmp_demo/sim/jetclass --workers 2 --quiet
jetevo simulate --process top --n-jets 500 --seed 31 --index 2 --out cmp_demo/sim/jetclass --workers 2 --quiet
jetevo recluster cmp_demo/sim/aoj --out cmp_demo/trees/aoj --workers 2 --shard-size 500 --quiet
jetevo recluster cmp_demo/sim/jetclass --out cmp_demo/trees/tops --workers 2 --quiet
jetevo tokenizer train --config configs/tokenizer.yaml --out cmp_demo/tree/tokenizer/tok.ckpt --quiet --trees cmp_demo/trees/aoj/RunG_batch0.0000.trees.parquet cmp_demo/trees/tops/TTBar_000.trees.parquet max_steps=150 n_codes=8192 checkpoint_every=100000
jetevo tokenizer eval --ckpt cmp_demo/tree/tokenizer/tok.ckpt --trees cmp_demo/reference/TTBar_002.trees.parquet --json cmp_demo/tree/tokenizer/report.json
jetevo tokenizer encode --ckpt cmp_demo/tree/tokenizer/tok.ckpt --trees cmp_demo/trees/aoj/RunG_batch0.0000.trees.parquet --out cmp_demo/tree/tokens/aoj_train
jetevo tokenizer encode --ckpt cmp_demo/tree/tokenizer/tok.ckpt --trees cmp_demo/trees/aoj/RunG_batch0.0001.trees.parquet --out cmp_demo/tree/tokens/aoj_val
jetevo tokenizer encode --ckpt cmp_demo/tree/tokenizer/tok.ckpt --trees cmp_demo/trees/tops/TTBar_000.trees.parquet --out cmp_demo/tree/tokens/top_train
jetevo tokenizer encode --ckpt cmp_demo/tree/tokenizer/tok.ckpt --trees cmp_demo/trees/tops/TTBar_001.trees.parquet --out cmp_demo/tree/tokens/top_val
jetevo tokenizer encode --ckpt cmp_demo/tree/tokenizer/tok.ckpt --trees cmp_demo/reference/TTBar_002.trees.parquet --out cmp_demo/tree/tokens/reference
jetevo train --config configs/tree_base.yaml --out cmp_demo/tree/model/pretrain --quiet --train cmp_demo/tree/tokens/aoj_train --val cmp_demo/tree/tokens/aoj_val model.n_layer=2 model.n_head=4 model.n_embd=64 train.batch_size=16 train.val_every=50 train.val_batches=20 train.warmup_steps=50 train.max_steps=150 train.lr=0.001
jetevo train --config configs/tree_base.yaml --out cmp_demo/tree/model/finetune --quiet --init-from cmp_demo/tree/model/pretrain/model.ckpt --train cmp_demo/tree/tokens/top_train --val cmp_demo/tree/tokens/top_val model.n_layer=2 model.n_head=4 model.n_embd=64 train.batch_size=16 train.val_every=50 train.val_batches=20 train.warmup_steps=50 train.max_steps=400 train.lr=0.0005 'train.split_weights=[8,8,4]'
jetevo evaluate-splits --ckpt cmp_demo/tree/model/finetune/model.ckpt --tokens cmp_demo/tree/tokens/reference --json cmp_demo/tree/model/heldout_nll.json
jetevo generate --ckpt cmp_demo/tree/model/finetune/model.ckpt --n-jets 1000 --seed 1 --out cmp_demo/tree/generated --device cpu --quiet
jetevo evaluate --generated cmp_demo/tree/generated --reference cmp_demo/reference --out cmp_demo/tree/evaluate --massless --no-plots
jetevo tokenizer train --config configs/tokenizer_flat.yaml --out cmp_demo/flat/tokenizer/tok.ckpt --quiet --trees cmp_demo/trees/aoj/RunG_batch0.0000.trees.parquet cmp_demo/trees/tops/TTBar_000.trees.parquet max_steps=150 n_codes=8192 checkpoint_every=100000
jetevo tokenizer eval --ckpt cmp_demo/flat/tokenizer/tok.ckpt --trees cmp_demo/reference/TTBar_002.trees.parquet --json cmp_demo/flat/tokenizer/report.json
jetevo tokenizer encode --ckpt cmp_demo/flat/tokenizer/tok.ckpt --trees cmp_demo/trees/aoj/RunG_batch0.0000.trees.parquet --out cmp_demo/flat/tokens/aoj_train
jetevo tokenizer encode --ckpt cmp_demo/flat/tokenizer/tok.ckpt --trees cmp_demo/trees/aoj/RunG_batch0.0001.trees.parquet --out cmp_demo/flat/tokens/aoj_val
jetevo tokenizer encode --ckpt cmp_demo/flat/tokenizer/tok.ckpt --trees cmp_demo/trees/tops/TTBar_000.trees.parquet --out cmp_demo/flat/tokens/top_train
jetevo tokenizer encode --ckpt cmp_demo/flat/tokenizer/tok.ckpt --trees cmp_demo/trees/tops/TTBar_001.trees.parquet --out cmp_demo/flat/tokens/top_val
jetevo tokenizer encode --ckpt cmp_demo/flat/tokenizer/tok.ckpt --trees cmp_demo/reference/TTBar_002.trees.parquet --out cmp_demo/flat/tokens/reference
jetevo train --config configs/flat_base.yaml --out cmp_demo/flat/model/pretrain --quiet --train cmp_demo/flat/tokens/aoj_train --val cmp_demo/flat/tokens/aoj_val model.n_layer=2 model.n_head=4 model.n_embd=64 train.batch_size=16 train.val_every=50 train.val_batches=20 train.warmup_steps=50 train.max_steps=150 train.lr=0.001
jetevo train --config configs/flat_base.yaml --out cmp_demo/flat/model/finetune --quiet --init-from cmp_demo/flat/model/pretrain/model.ckpt --train cmp_demo/flat/tokens/top_train --val cmp_demo/flat/tokens/top_val model.n_layer=2 model.n_head=4 model.n_embd=64 train.batch_size=16 train.val_every=50 train.val_batches=20 train.warmup_steps=50 train.max_steps=400 train.lr=0.0005
jetevo evaluate-particles --ckpt cmp_demo/flat/model/finetune/model.ckpt --tokens cmp_demo/flat/tokens/reference --json cmp_demo/flat/model/heldout_nll.json
jetevo generate --ckpt cmp_demo/flat/model/finetune/model.ckpt --n-jets 1000 --seed 1 --out cmp_demo/flat/generated --device cpu --quiet
jetevo evaluate --generated cmp_demo/flat/generated --reference cmp_demo/reference --out cmp_demo/flat/evaluate --massless --no-plots
jetevo generate --ckpt cmp_demo/tree/model/finetune/model.ckpt --n-jets 1000 --seed 1 --out cmp_demo/bigram/generated --device cpu --quiet --baseline bigram
jetevo evaluate --generated cmp_demo/bigram/generated --reference cmp_demo/reference --out cmp_demo/bigram/evaluate --massless --no-plots
