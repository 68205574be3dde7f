// Renders chat prompts exactly as llama-cli and llama-server do (common_chat_templates_init on the model's own
// template, then common_chat_templates_apply) and tokenizes them as the server does (common_tokenize with
// add_special and parse_special), once with the Jinja engine and once without it (--no-jinja / older builds).
// Used by bench/bench_llamacpp.py; built against llama.cpp's libllama and libllama-common.
//
//   llamacpp_chat MODEL.gguf CONVERSATIONS.json   ->  one JSON line per conversation:
//   {"jinja": {"prompt": ..., "ids": [...]} | {"error": ...}, "legacy": {...}, "add_bos": bool}
#include "chat.h"
#include "common.h"
#include "llama.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>

using json = nlohmann::ordered_json;

int main(int argc, char ** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf CONVERSATIONS.json\n", argv[0]);
        return 2;
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.vocab_only         = true;
    llama_model * model        = llama_model_load_from_file(argv[1], mparams);
    if (model == nullptr) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    auto                tmpls = common_chat_templates_init(model, "");

    std::ifstream in(argv[2]);
    const json    conversations = json::parse(in);
    for (const auto & conv : conversations) {
        json row;
        row["add_bos"] = llama_vocab_get_add_bos(vocab);
        for (bool jinja : { true, false }) {
            common_chat_templates_inputs inputs;
            for (const auto & m : conv) {
                common_chat_msg msg;
                msg.role    = m.at("role").get<std::string>();
                msg.content = m.at("content").get<std::string>();
                inputs.messages.push_back(msg);
            }
            inputs.add_generation_prompt = true;
            inputs.use_jinja             = jinja;
            inputs.add_bos               = llama_vocab_get_add_bos(vocab);
            inputs.add_eos               = llama_vocab_get_add_eos(vocab);
            json out;
            try {
                const auto params = common_chat_templates_apply(tmpls.get(), inputs);
                out["prompt"]     = params.prompt;
                out["ids"]        = common_tokenize(vocab, params.prompt, /*add_special*/ true, /*parse_special*/ true);
            } catch (const std::exception & e) {
                out["error"] = e.what();
            }
            row[jinja ? "jinja" : "legacy"] = out;
        }
        std::cout << row.dump() << "\n";
    }
    tmpls.reset();
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
