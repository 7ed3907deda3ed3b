//! Native hellos and frames, as the host and the frontend read them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskit_plugin_api::wire::native;

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = data.get(..native::HELLO_LEN) {
        let hello: [u8; native::HELLO_LEN] = hello.try_into().unwrap();
        let _ = native::parse_client_hello(&hello);
        let _ = native::parse_server_hello(&hello);
    }
    let mut rest = data;
    while let Ok(Some((body, used))) = native::split_frame(rest, 1 << 16) {
        assert!(used <= rest.len() && used >= native::LENGTH_LEN);
        if let Ok(native::Request::Call {
            id,
            task,
            args,
            kwargs,
        }) = native::parse_request(body)
        {
            // What parses re-encodes to the same body.
            let mut again = Vec::new();
            native::encode_call(&mut again, id, task, args, kwargs);
            assert_eq!(&again[native::LENGTH_LEN..], body);
        }
        let _ = native::parse_response(body);
        rest = &rest[used..];
    }
});
