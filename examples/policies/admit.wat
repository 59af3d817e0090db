(module
  ;; ABI v1 in WebAssembly text: admits every task. A starting point without a compiler
  ;; (the `~` branch is where a rule would go; here it does nothing).
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"action\":\"admit\"}")
  (data (i32.const 64) "{\"action\":\"maybe\"}")
  (func (export "llorch_abi_version") (result i32) i32.const 1)
  (func (export "llorch_alloc") (param i32) (result i32)
    (if (result i32) (i32.le_u (local.get 0) (i32.const 60000))
      (then (i32.const 1024)) (else (i32.const 0))))
  (func $marked (param $p i32) (param $n i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 126))
          (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func (export "llorch_decide") (param $hook i32) (param $p i32) (param $n i32) (result i64)
    (if (call $marked (local.get $p) (local.get $n))
      (then nop))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 18)))
)
