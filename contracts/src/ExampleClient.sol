// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {JobCreator} from "./JobCreator.sol";
import {ILilypadJobClient} from "./ILilypadJobClient.sol";

/// @title ExampleClient
/// @notice A minimal contract that runs a job through JobCreator and keeps the result CID. Its
///         callback only stores and emits, well within JobCreator.CALLBACK_GAS.
contract ExampleClient is ILilypadJobClient {
    using SafeERC20 for IERC20;

    JobCreator public immutable jobCreator;
    mapping(uint256 jobId => bytes) public results;
    mapping(uint256 jobId => bytes32) public deals;

    event ResultReceived(uint256 indexed jobId, bytes32 indexed dealId, bytes resultCid);

    error NotJobCreator(address caller);

    constructor(JobCreator jobCreator_) {
        jobCreator = jobCreator_;
    }

    /// @notice Run `module` with `inputs`; the caller pays the job cost (approve this contract) and
    ///         gets any change back.
    function runJob(string calldata module, string[] calldata inputs) external returns (uint256) {
        IERC20 token = jobCreator.token();
        uint256 cost = jobCreator.jobCost();
        token.safeTransferFrom(msg.sender, address(this), cost);
        token.forceApprove(address(jobCreator), cost);
        return jobCreator.runJob(module, inputs, msg.sender);
    }

    /// @inheritdoc ILilypadJobClient
    function submitResults(uint256 jobId, bytes32 dealId, bytes calldata resultCid) external {
        if (msg.sender != address(jobCreator)) revert NotJobCreator(msg.sender);
        results[jobId] = resultCid;
        deals[jobId] = dealId;
        emit ResultReceived(jobId, dealId, resultCid);
    }
}
