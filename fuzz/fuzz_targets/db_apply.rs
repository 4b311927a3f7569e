#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::db_targets::db_apply(data));
