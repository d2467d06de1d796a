#!/usr/bin/env python3
"""Builds guarantee.cpp with every case in its refused form and checks each refusal.

The build must fail, and for every case below its message must appear in one diagnostic (the
error line that carries it, with the include chain and instantiation context printed before it
and the notes after it) together with the user's type, as a whole word: the instantiation trace
names it.

    expect_failure.py BUILD_DIR TARGET
"""
import re
import subprocess
import sys

# (case number in guarantee.cpp, name, the user's type, the message or a part of it)
CASES = [
    (1, "model_undeclared_member", "CountingNet",
     "keel [model state declared]: the model (or a submodule class of your own that it declares) has data members of its own"),
    (2, "model_member_outside_declaration", "RunningNet",
     "keel [every member declared]: a data member lies outside BOOST_HANA_DEFINE_STRUCT: the declared members do not account for sizeof"),
    (3, "optimizer_policy_state", "Lookahead",
     "keel [state is saved]: this optimizer policy adds data members to its keel::optim::TorchOptimizer base"),
    (4, "scheduler_inherited_serialize", "WarmRestarts",
     "keel [inherited serialization]: this component inherits `serialize`"),
    (5, "callback_inherited_declaration", "FlaggingTracker",
     "keel [inherited serialization]: this component inherits the BOOST_HANA_DEFINE_STRUCT of a base class"),
    (6, "non_aggregate_tail_padding", "Averager",
     "keel [every member declared]: a data member lies outside BOOST_HANA_DEFINE_STRUCT, in the tail padding"),
    (7, "final_near_miss_hook", "Announcer",
     "keel: callback member 'on_train_epoch_end' does not match the hook signature"),
    (8, "final_tail_padding", "Sealed",
     "keel [final class]: this final class's declared members leave tail padding"),
    (9, "format_interface", "TextFormat",
     "keel checkpoint format policy: needs `static constexpr const char* extension`"),
    (10, "format_with_data", "CountingFormat",
     "keel [state is saved]: a checkpoint format policy is a set of names and types and must hold no data"),
    (11, "free_serialize_of_base", "Stats",
     "keel [inherited serialization]: this component is serialized by a free function that does not take exactly its type"),
    (12, "role_twice", "CosineWarmup", "keel::Trainer: the role 'scheduler' is given twice"),
    (13, "wrong_options_type", "AdamWOptions", "keel::Trainer: a constructor argument matches no component"),
    (14, "training_step_return_type", "LossAndCount", "keel: the model's training_step must return torch::Tensor"),
    (15, "model_member_not_serializable", "BinningNet",
     "keel [model state declared]: a declared model member that is not a tensor or a submodule has no cereal serialization"),
    (16, "members_of_two_classes", "TwoLevelCounter",
     "keel [every member declared]: the declared members of this component come from more than one class"),
    (17, "submodule_plain_member", "ScalerImpl",
     "keel [model state declared]: a submodule class of your own declares plain members"),
    (18, "stateful_without_serialization", "CountSteps",
     "keel [state is saved]: this component holds data but has no serialization"),
    (19, "member_outside_hana_size", "SizeTracker",
     "keel [every member declared]: a data member lies outside BOOST_HANA_DEFINE_STRUCT: the declared members do not account for sizeof"),
    (20, "member_outside_hana_padding", "PaddingTracker", "the aggregate has more fields than the declaration lists"),
    (21, "near_miss_hook", "EpochAnnouncer",
     "keel: callback member 'on_train_epoch_end' does not match the hook signature; expected: void on_train_epoch_end(keel::Context&)"),
    (22, "hook_returning_value", "Stopper",
     "keel: callback member 'on_optimizer_step_end' does not match the hook signature; expected: void on_optimizer_step_end(keel::Context&)"),
]


# Where a diagnostic starts: g++ and clang print the include chain and g++ the instantiation
# context ("In instantiation of ...") before the error line; clang prints its instantiation
# notes after it.
CONTEXT = re.compile(r"^In file included from |: In (instantiation of|substitution of|function|member function|"
                     r"static member function|constructor|destructor|lambda function)\b")
ERROR = re.compile(r"(^|:\s)(fatal )?error:")


def diagnostics(output):
    """Yields the text of each diagnostic: the context lines before its error line, the error
    line, and the lines after it up to the next diagnostic's first line."""
    block, has_error = [], False
    for line in output.splitlines():
        starts_context = bool(CONTEXT.search(line)) and not line.startswith(" ")
        is_error = bool(ERROR.search(line))
        if (starts_context and has_error) or (is_error and has_error):
            yield "\n".join(block)
            block, has_error = [], False
        block.append(line)
        has_error = has_error or is_error
    if has_error:
        yield "\n".join(block)


def main():
    build_dir, target = sys.argv[1:3]
    build = subprocess.run(["cmake", "--build", build_dir, "--target", target],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    output = build.stdout
    if build.returncode == 0:
        sys.exit(f"{target} compiled, but every case in it must be refused")
    found = list(diagnostics(output))
    failed = []
    for number, name, user_type, message in CASES:
        named = re.compile(r"\b" + re.escape(user_type) + r"\b")
        if any(message in text and named.search(text) for text in found):
            print(f"case {number} ({name}) refused as expected: {message}")
        elif any(message in text for text in found):
            failed.append(f"case {number} ({name}): the message is there, but no diagnostic that carries it "
                          f"names the user's type '{user_type}'")
        else:
            failed.append(f"case {number} ({name}): no diagnostic carries the expected message '{message}'")
    if failed:
        print(output)
        sys.exit("\n".join([f"{len(failed)} of {len(CASES)} cases not refused as expected:"] + failed))
    print(f"all {len(CASES)} cases refused as expected ({len(found)} errors)")


if __name__ == "__main__":
    main()
